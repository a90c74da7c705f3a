//! The Swin Transformer cases against timm, and proof that the checks bite: planted
//! bugs of a port (the 2x2 neighbours of a patch merging concatenated in another
//! order, the relative offsets of the position bias negated, the cyclic shift left
//! out, the shifted-window mask left out) each fail and name the module where they
//! start.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use replica_blocks::swin_block::{SwinBlock, SwinBlockConfig};
use replica_blocks::Size2;
use replica_check::{compare_trace, trace, Bundle, Namespace, Parity, Tolerance, TraceReport, WeightMap};
use replica_models::config::bundle_config;
use replica_models::{LoadCheckpoint, Swin, SwinConfig};
use replica_suite::swin::cases;

mod common;

/// The Swin model fixture's parameters, after `edit`, run traced and compared with the reference.
fn traced_model(edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> TraceReport {
    let bundle = common::fixture("models/swin");
    let run = Parity::new(&bundle).unwrap();
    let mut params = run.params().clone();
    edit(&mut params);
    let config: SwinConfig = bundle_config(&bundle).unwrap();
    let model = Swin::from_tensors(&config, params, bundle.origin(), DType::F32, &Device::Cpu).unwrap();
    let images = run.input("0").unwrap();
    let (logits, recorded) = trace::record(|| model.forward(&images));
    logits.unwrap();
    compare_trace(&recorded, &bundle, Tolerance::for_dtype(DType::F32))
}

/// A block fixture run traced with `config` (the fixture's, or a planted bug's) and
/// its parameters after `edit`.
fn traced_block(
    bundle: &Bundle,
    config: &SwinBlockConfig,
    edit: impl FnOnce(&mut BTreeMap<String, Tensor>),
) -> TraceReport {
    let run = Parity::new(bundle).unwrap();
    let mut params = run.params().clone();
    edit(&mut params);
    let weights = WeightMap::new().apply(params, bundle.origin()).unwrap();
    let block = weights
        .build(DType::F32, &Device::Cpu, |vb| SwinBlock::new(config, vb))
        .unwrap();
    let x = run.input("0").unwrap();
    let (y, recorded) = trace::record(|| block.forward(&x));
    y.unwrap();
    compare_trace(&recorded, bundle, Tolerance::for_dtype(DType::F32))
}

#[test]
fn every_swin_case_matches_its_reference() {
    common::assert_all_pass(&cases());
}

#[test]
fn every_stored_gradient_and_activation_is_checked() {
    common::assert_stored_tensors_checked(&cases());
    for (bundle, report) in common::run(&cases()) {
        let float = bundle.metadata().dtype == "float32";
        let params = bundle.names(Namespace::Param).count();
        assert!(params > 0, "{}", report.title);
        assert_eq!(
            bundle.names(Namespace::ParamGrad).count(),
            if float { params } else { 0 },
            "{}: f32 fixtures carry every parameter's gradient, bf16 ones none",
            report.title
        );
        let tables = bundle
            .names(Namespace::ParamGrad)
            .filter(|name| name.ends_with("relative_position_bias_table"))
            .count();
        assert!(
            !float || tables > 0 || report.title.contains("merging"),
            "{}",
            report.title
        );
    }
}

#[test]
fn the_fixtures_exercise_shifts_padding_and_clamped_windows() {
    // The shifted block pads its 5x4 map to 6x6 windows of 3x3 and shifts by 1.
    let shifted: SwinBlockConfig = common::fixture("blocks/swin_block_shifted").config().unwrap();
    assert_eq!(shifted.window_and_shift(), (Size2::square(3), Size2::square(1)));
    // The plain block's 2x5 map is lower than its window: timm clamps the window to 2x3.
    let plain: SwinBlockConfig = common::fixture("blocks/swin_block").config().unwrap();
    assert_eq!(plain.window_and_shift(), (Size2::new(2, 3), Size2::square(0)));
    // The model: stage 0 on a 4x6 map (shifted, padded), stage 1 on 2x3 (clamped).
    let config: SwinConfig = bundle_config(&common::fixture("models/swin")).unwrap();
    assert_eq!(config.stage_resolutions(), [Size2::new(4, 6), Size2::new(2, 3)]);
    let window = Size2::square(3);
    assert_eq!(
        config.block_config(0, 1, window, 0.0).window_and_shift(),
        (window, Size2::square(1))
    );
    assert_eq!(
        config.block_config(1, 1, window, 0.0).window_and_shift(),
        (Size2::new(2, 3), Size2::square(0))
    );
}

#[test]
fn merging_the_neighbours_in_another_order_diverges_first_at_the_merge_norm() {
    // The planted bug: rows and columns of the 2x2 group exchanged, so the
    // concatenation is x0, x2, x1, x3 instead of timm's x0, x1, x2, x3. On the
    // reference's weights that is the same as swapping the middle two quarters of
    // the norm's and the reduction's input channels.
    let report = traced_model(|params| {
        let swap = |t: &Tensor, dim: usize| {
            let quarter = t.dim(dim).unwrap() / 4;
            let part = |i: usize| t.narrow(dim, i * quarter, quarter).unwrap();
            Tensor::cat(&[part(0), part(2), part(1), part(3)], dim).unwrap()
        };
        for (name, dim) in [
            ("layers.1.downsample.norm.weight", 0),
            ("layers.1.downsample.norm.bias", 0),
            ("layers.1.downsample.reduction.weight", 1),
        ] {
            let swapped = swap(&params[name], dim);
            params.insert(name.into(), swapped);
        }
    });
    println!("{report}");
    assert_eq!(
        report.first_divergence.as_deref(),
        Some("layers.1.downsample.norm"),
        "{report}"
    );
}

#[test]
fn negated_relative_offsets_diverge_first_at_the_attention_probabilities() {
    // The planted bug: the bias of (i, j) read at the offset of j from i. The table
    // index of the negated offset is `rows - 1 - index`, so reading the table
    // upside down plants it.
    let bundle = common::fixture("blocks/swin_block_shifted");
    let config: SwinBlockConfig = bundle.config().unwrap();
    let report = traced_block(&bundle, &config, |params| {
        let name = "attn.relative_position_bias_table";
        let table = &params[name];
        let rows = table.dim(0).unwrap();
        let reversed: Vec<u32> = (0..rows as u32).rev().collect();
        let index = Tensor::new(reversed.as_slice(), &Device::Cpu).unwrap();
        let flipped = table.index_select(&index, 0).unwrap();
        params.insert(name.into(), flipped);
    });
    println!("{report}");
    assert_eq!(report.first_divergence.as_deref(), Some("attn.softmax"), "{report}");
}

#[test]
fn leaving_out_the_cyclic_shift_diverges_first_in_the_attention() {
    // The planted bug: the shifted block run as a plain one (no roll, no mask).
    let bundle = common::fixture("blocks/swin_block_shifted");
    let right: SwinBlockConfig = bundle.config().unwrap();
    let wrong = SwinBlockConfig {
        shift_size: Size2::square(0),
        ..right
    };
    let report = traced_block(&bundle, &wrong, |_| {});
    println!("{report}");
    assert_eq!(report.first_divergence.as_deref(), Some("attn.qkv"), "{report}");
    // The norm before it still matches: the bug is located, not smeared.
    let norm = report.rows.iter().find(|row| row.path == "norm1").unwrap();
    assert!(norm.comparison.as_ref().unwrap().passed(), "{report}");
}

#[test]
fn cases_are_unique_and_every_fixture_comes_from_the_script() {
    common::assert_names_unique();
    let script = std::fs::read_to_string(replica_suite::fixtures_dir().join("../../python/fixtures_swin.py")).unwrap();
    for case in cases() {
        assert!(
            case.fixture_path(&replica_suite::fixtures_dir()).is_file(),
            "{}",
            case.name
        );
        let (_, file) = case.fixture.split_once('/').unwrap();
        assert!(
            script.contains(&format!("\"{file}.safetensors\"")),
            "{}: not written by python/fixtures_swin.py",
            case.name
        );
        assert!(case.paper.is_some(), "{}", case.name);
    }
}

#[test]
fn fixtures_stay_small() {
    let total = common::fixture_bytes(&cases());
    // The float64 shadow makes up about half of each bundle.
    assert!(total < 900_000, "{total} bytes of fixtures");
}

#[test]
fn bad_configurations_fail_with_the_field_named() {
    let config: SwinConfig = bundle_config(&common::fixture("models/swin")).unwrap();
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let error = |config: SwinConfig| {
        use replica_models::Architecture;
        Swin::new(&config, vb.clone()).unwrap_err().to_string()
    };
    let err = error(SwinConfig {
        num_heads: vec![1],
        ..config.clone()
    });
    assert!(err.contains("num_heads") && err.contains("depths"), "{err}");
    let err = error(SwinConfig {
        embed_dim: 6,
        num_heads: vec![4, 4],
        ..config.clone()
    });
    assert!(err.contains("num_heads"), "{err}");
    let err = error(SwinConfig {
        img_size: Size2::new(9, 12),
        ..config.clone()
    });
    assert!(err.contains("patch_size"), "{err}");
    let err = error(SwinConfig {
        global_pool: "max".into(),
        ..config
    });
    assert!(err.contains("global_pool"), "{err}");
}

#[test]
fn images_of_another_size_are_refused_with_the_sizes_named() {
    let bundle = common::fixture("models/swin");
    let config: SwinConfig = bundle_config(&bundle).unwrap();
    let params = Parity::new(&bundle).unwrap().params().clone();
    let model = Swin::from_tensors(&config, params, bundle.origin(), DType::F32, &Device::Cpu).unwrap();
    let err = model
        .forward(&Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    let headline = err.lines().next().unwrap();
    assert!(
        headline.contains("the input is 8x8") && headline.contains("built for 8x12"),
        "{err}"
    );
}

#[test]
fn training_reaches_stochastic_depth_and_is_eval_without_it() {
    use candle_core::ModuleT;
    let bundle = common::fixture("models/swin");
    let config: SwinConfig = bundle_config(&bundle).unwrap();
    let run = Parity::new(&bundle).unwrap();
    let images = run.input("0").unwrap();
    let build = |config: &SwinConfig| {
        Swin::from_tensors(config, run.params().clone(), bundle.origin(), DType::F32, &Device::Cpu).unwrap()
    };
    let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // No drop rates: training computes what evaluation does.
    let still = build(&SwinConfig {
        drop_path_rate: 0.0,
        ..config.clone()
    });
    assert_eq!(
        values(still.forward_t(&images, true).unwrap()),
        values(still.forward(&images).unwrap())
    );
    // Stochastic depth near 1 in the late blocks: training drops branches.
    let dropping = build(&SwinConfig {
        drop_path_rate: 0.99,
        ..config
    });
    assert_ne!(
        values(dropping.forward_t(&images, true).unwrap()),
        values(dropping.forward(&images).unwrap())
    );
}

#[test]
fn leaving_out_the_shifted_window_mask_diverges_first_at_the_attention_probabilities() {
    use replica_blocks::window::{shifted_window_mask, window_partition};
    use replica_blocks::window_attention::{WindowAttention, WindowAttentionConfig};
    // The shifted block's attention rebuilt from the public pieces, on the block's
    // recorded `norm1` output: roll, pad to whole windows, partition, attend.
    let bundle = common::fixture("blocks/swin_block_shifted");
    let config: SwinBlockConfig = bundle.config().unwrap();
    let (window, shift) = config.window_and_shift();
    let run = Parity::new(&bundle).unwrap();
    let attention = WindowAttentionConfig::new(config.dim, config.num_heads, window);
    // The attention's weights alone (the strict loader refuses weights nothing asks for).
    let params: BTreeMap<String, Tensor> = run
        .params()
        .iter()
        .filter(|(name, _)| name.starts_with("attn."))
        .map(|(name, t)| (name.clone(), t.clone()))
        .collect();
    let attn = WeightMap::new()
        .apply(params, bundle.origin())
        .unwrap()
        .build(DType::F32, &Device::Cpu, |vb| {
            WindowAttention::new(&attention, vb.pp("attn"))
        })
        .unwrap();
    let normed = bundle.get(Namespace::Activation, "norm1").unwrap().clone();
    let (_, h, w, _) = normed.dims4().unwrap();
    let shifted = normed
        .roll(-(shift.height as i32), 1)
        .unwrap()
        .roll(-(shift.width as i32), 2)
        .unwrap();
    let (hp, wp) = (
        h.div_ceil(window.height) * window.height,
        w.div_ceil(window.width) * window.width,
    );
    let padded = shifted
        .pad_with_zeros(1, 0, hp - h)
        .unwrap()
        .pad_with_zeros(2, 0, wp - w)
        .unwrap();
    let windows = window_partition(&padded, window).unwrap();
    let mask = shifted_window_mask(hp, wp, window, shift, DType::F32, &Device::Cpu).unwrap();
    let compare = |mask: Option<&Tensor>| {
        let (y, recorded) = trace::record(|| attn.forward(&windows, mask));
        y.unwrap();
        compare_trace(&recorded, &bundle, Tolerance::for_dtype(DType::F32))
    };
    let right = compare(Some(&mask));
    assert_eq!(right.first_divergence, None, "{right}");
    assert!(right.compared() >= 5, "{right}");
    let wrong = compare(None);
    println!("{wrong}");
    assert_eq!(wrong.first_divergence.as_deref(), Some("attn.softmax"), "{wrong}");
}

#[test]
fn checkpoints_that_store_the_index_and_mask_buffers_load() {
    // Older timm checkpoints also hold the non-persistent buffers, which the model computes.
    let bundle = common::fixture("models/swin");
    let config: SwinConfig = bundle_config(&bundle).unwrap();
    let run = Parity::new(&bundle).unwrap();
    let mut params = run.params().clone();
    let index = Tensor::zeros((9, 9), DType::I64, &Device::Cpu).unwrap();
    params.insert("layers.0.blocks.0.attn.relative_position_index".into(), index);
    let mask = Tensor::zeros((4, 9, 9), DType::F32, &Device::Cpu).unwrap();
    params.insert("layers.0.blocks.1.attn_mask".into(), mask);
    let model = Swin::from_tensors(&config, params, bundle.origin(), DType::F32, &Device::Cpu).unwrap();
    let logits = model.forward(&run.input("0").unwrap()).unwrap();
    let expected = bundle.output("0").unwrap();
    let diff = (logits - expected).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
}
