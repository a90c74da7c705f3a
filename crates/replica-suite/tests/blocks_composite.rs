//! Whole transformer layers and differential attention against their references,
//! and proof that the checks bite: a planted differential-attention bug is found at
//! the right module, the residual layout switch changes what a layer computes on the
//! reference's weights, and evaluation is deterministic and matches the reference.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use replica_blocks::activation::Activation;
use replica_blocks::attention::AttentionConfig;
use replica_blocks::diff_attention::{lambda_init, DiffAttention, DiffAttentionConfig};
use replica_blocks::transformer_block::{BlockNames, ResidualLayout, TransformerBlock, TransformerBlockConfig};
use replica_check::trace::Trace;
use replica_check::{compare_trace, trace, Bundle, Namespace, Parity, Tolerance, TraceReport, WeightMap};
use replica_suite::composite::cases;
use replica_suite::fixtures_dir;
use replica_suite::reference::POST_NORM_PORT_ONLY;

mod common;

fn fixture(stem: &str) -> Bundle {
    common::fixture(&format!("blocks/{stem}"))
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    values(a)
        .iter()
        .zip(values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The timm `Block` fixture without LayerScale, as a config (its weights fit all three layouts).
fn timm_config(bundle: &Bundle) -> TransformerBlockConfig {
    let config = bundle.metadata().config.clone();
    assert_eq!(config["init_values"], serde_json::Value::Null);
    let mut block = TransformerBlockConfig::timm(16, 4, 2.0, true, false, None);
    block.norm_eps = 1e-6;
    block.attention.norm_eps = 1e-6;
    block
}

/// Builds `build` from a fixture's weights (strictly) and runs `forward` on its input,
/// traced: the output, what was recorded, and the trace compared with the reference.
fn traced<M>(
    bundle: &Bundle,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
    forward: impl FnOnce(&M, &Tensor) -> candle_core::Result<Tensor>,
) -> (Tensor, Trace, TraceReport) {
    let run = Parity::new(bundle).unwrap();
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let block = weights.build(DType::F32, &Device::Cpu, build).unwrap();
    let x = run.input("0").unwrap();
    let (y, recorded) = trace::record(|| forward(&block, &x));
    let report = compare_trace(&recorded, bundle, Tolerance::for_dtype(DType::F32));
    (y.unwrap(), recorded, report)
}

#[test]
fn every_composite_case_matches_its_reference() {
    common::assert_all_pass(&cases());
}

#[test]
fn every_stored_gradient_and_activation_is_checked() {
    common::assert_stored_tensors_checked(&cases());
    for (bundle, report) in common::run(&cases()) {
        assert_eq!(common::rows(&report, "output/"), 1, "{}", report.title);
        let float = bundle.metadata().dtype == "float32";
        assert_eq!(
            bundle.names(Namespace::ParamGrad).count(),
            if float {
                bundle.names(Namespace::Param).count()
            } else {
                0
            },
            "{}: f32 fixtures carry every parameter's gradient, half-precision ones none",
            report.title
        );
    }
}

#[test]
fn attention_tuples_are_traced_under_the_reference_names() {
    // Eager HF attention returns (output, probabilities): the block records both.
    let report = cases()
        .into_iter()
        .find(|c| c.name == "block_llama")
        .unwrap()
        .run(&fixtures_dir(), &Device::Cpu)
        .unwrap();
    for name in [
        "act/layer.self_attn:0",
        "act/layer.self_attn:1",
        "act/rotary_emb:0",
        "act/layer",
    ] {
        let row = report
            .rows
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert!(row.comparison.passed(), "{report}");
    }
    assert!(!report.rows.iter().any(|r| r.name == "act/layer.self_attn"), "{report}");
    // sdpa returns (output, None): only `attn:0`.
    let bundle = fixture("block_gpt2");
    assert!(bundle.contains(Namespace::Activation, "attn:0"));
    assert!(!bundle.contains(Namespace::Activation, "attn:1"));
}

#[test]
fn the_post_norm_case_sets_aside_only_the_unhookable_projections() {
    let bundle = fixture("block_post_norm");
    for name in POST_NORM_PORT_ONLY {
        assert!(!bundle.contains(Namespace::Activation, name), "{name}");
    }
    // Everything torch records is compared.
    for name in [
        "self_attn:0",
        "dropout1",
        "norm1",
        "linear1",
        "dropout",
        "linear2",
        "dropout2",
        "norm2",
    ] {
        assert!(bundle.contains(Namespace::Activation, name), "{name}");
    }
}

#[test]
fn cases_are_unique_and_every_fixture_comes_from_the_script() {
    common::assert_names_unique();
    common::assert_written_by(&cases(), "fixtures_blocks_composite.py");
    for case in cases() {
        let file = case.fixture.strip_prefix("blocks/").unwrap();
        assert!(
            file.starts_with("block_") || file.starts_with("diff_attention"),
            "{file}"
        );
        assert!(case.paper.is_some(), "{}", case.name);
    }
}

#[test]
fn fixtures_stay_small() {
    let total = common::fixture_bytes(&cases());
    // The float64 shadow (docs/bundle-format.md) makes up about half of each bundle.
    assert!(total < 900_000, "{total} bytes of fixtures");
}

/// The planted bug of docs/adding-a-block.md: the layer built with the paper's 1-based
/// layer number where the reference takes the 0-based index (`depth: 3` for the
/// reference's `depth=2`), so λ_init is 0.5934 instead of 0.4707. The projections still
/// match; the first module to diverge is `subln`, the first one after the two softmax
/// maps are combined with λ.
#[test]
fn diff_attention_with_the_wrong_depth_diverges_first_at_subln() {
    let bundle = fixture("diff_attention");
    let right: DiffAttentionConfig = bundle.config().unwrap();
    assert_eq!(right.depth, 2);
    let wrong = DiffAttentionConfig { depth: 3, ..right };
    let (_, _, report) = traced(&bundle, |vb| DiffAttention::new(&wrong, vb), |a, x| a.forward(x, None));
    println!("{report}");
    assert_eq!(report.first_divergence.as_deref(), Some("subln"), "{report}");
    let passed: Vec<&str> = report
        .rows
        .iter()
        .filter(|r| r.comparison.as_ref().is_some_and(|c| c.passed()))
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(passed, ["q_proj", "k_proj", "v_proj"], "{report}");

    // With the right depth the same trace has no divergence.
    let (_, _, report) = traced(&bundle, |vb| DiffAttention::new(&right, vb), |a, x| a.forward(x, None));
    assert!(report.passed() && report.not_recorded.is_empty(), "{report}");
    assert_eq!(report.compared(), 5);
}

#[test]
fn swapped_lambda_vectors_are_caught_at_subln_too() {
    // A checkpoint-naming slip: λ_q1 and λ_q2 exchanged flips the sign of λ − λ_init.
    let bundle = fixture("diff_attention");
    let config: DiffAttentionConfig = bundle.config().unwrap();
    let run = Parity::new(&bundle).unwrap();
    let map = WeightMap::new()
        .rename("^lambda_q1$", "swap")
        .rename("^lambda_q2$", "lambda_q1")
        .rename("^swap$", "lambda_q2");
    let weights = map.apply(run.params().clone(), bundle.origin()).unwrap();
    let attention = weights
        .build(DType::F32, &Device::Cpu, |vb| DiffAttention::new(&config, vb))
        .unwrap();
    let (y, recorded) = trace::record(|| attention.forward(&run.input("0").unwrap(), None));
    y.unwrap();
    let report = compare_trace(&recorded, &bundle, Tolerance::for_dtype(DType::F32));
    assert_eq!(report.first_divergence.as_deref(), Some("subln"), "{report}");
}

#[test]
fn lambda_follows_the_paper() {
    // λ_init = 0.8 − 0.6·exp(−0.3·(l − 1)) with l = depth + 1.
    assert!((lambda_init(0) - 0.2).abs() < 1e-12);
    assert!((lambda_init(2) - (0.8 - 0.6 * (-0.6f64).exp())).abs() < 1e-12);
    assert!(lambda_init(100) < 0.8 && lambda_init(100) > 0.7999);

    let bundle = fixture("diff_attention_gqa");
    let config: DiffAttentionConfig = bundle.config().unwrap();
    let run = Parity::new(&bundle).unwrap();
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let attention = weights
        .build(DType::F32, &Device::Cpu, |vb| DiffAttention::new(&config, vb))
        .unwrap();
    assert_eq!(
        (attention.heads(), attention.kv_heads(), attention.head_dim()),
        (4, 2, 4)
    );
    assert!((attention.lambda_init() - lambda_init(5)).abs() < 1e-12);
    let dot = |a: &str, b: &str| -> f32 {
        values(&run.param(a).unwrap())
            .iter()
            .zip(values(&run.param(b).unwrap()))
            .map(|(x, y)| x * y)
            .sum()
    };
    let expected = dot("lambda_q1", "lambda_k1").exp() - dot("lambda_q2", "lambda_k2").exp() + lambda_init(5) as f32;
    let lambda: f32 = attention.lambda().unwrap().to_scalar().unwrap();
    assert!((lambda - expected).abs() < 1e-5, "{lambda} vs {expected}");

    // Each softmax row sums to 1, so each row of the differential map sums to 1 − λ,
    // and causality leaves the future at exactly zero.
    let (_, maps) = attention.forward_with_weights(&run.input("0").unwrap(), None).unwrap();
    assert_eq!(maps.dims(), [2, 4, 5, 5]);
    for sum in values(&maps.sum(D::Minus1).unwrap()) {
        assert!((sum - (1.0 - lambda)).abs() < 1e-5, "{sum}");
    }
    let future = maps.narrow(2, 0, 1).unwrap().narrow(3, 1, 4).unwrap();
    assert!(values(&future).iter().all(|v| *v == 0.0));
}

#[test]
fn pre_post_and_parallel_layouts_compute_different_things_on_the_same_weights() {
    let bundle = fixture("block_timm");
    let x = Parity::new(&bundle).unwrap().input("0").unwrap();
    let shared_norm = {
        let mut names = BlockNames::timm();
        names.norm2 = None;
        names
    };
    let layouts = [
        (ResidualLayout::PreNorm, BlockNames::timm()),
        (ResidualLayout::PostNorm, BlockNames::timm()),
        (ResidualLayout::Parallel, BlockNames::timm()),
        (ResidualLayout::Parallel, shared_norm),
    ];
    let mut outputs = Vec::new();
    for (layout, names) in layouts {
        let shared = names.norm2.is_none();
        let config = TransformerBlockConfig {
            layout,
            names,
            ..timm_config(&bundle)
        };
        let build = |vb: VarBuilder| TransformerBlock::new(&config, vb);
        let (y, trace, report) = if shared {
            // norm2's weights are left over: load leniently.
            let run = Parity::new(&bundle).unwrap();
            let weights = WeightMap::new()
                .lenient()
                .apply(run.params().clone(), bundle.origin())
                .unwrap();
            let block = weights.build(DType::F32, &Device::Cpu, build).unwrap();
            let (y, trace) = trace::record(|| block.forward(&x, None, None).unwrap());
            let report = compare_trace(&trace, &bundle, Tolerance::for_dtype(DType::F32));
            (y, trace, report)
        } else {
            traced(&bundle, build, |b, x| b.forward(x, None, None))
        };
        let get = |name: &str| trace.get(name).unwrap_or_else(|| panic!("{name}")).clone();
        let branches = ((&x + get("attn")).unwrap() + get("mlp")).unwrap();
        match (layout, shared) {
            // x + attn(norm1(x)) + mlp(norm2(x + attn)): the reference's own layout.
            (ResidualLayout::PreNorm, _) => {
                assert!(report.passed(), "{report}");
                assert!(max_abs_diff(&y, &branches) < 1e-6);
            }
            // norm2(h + mlp(h)) with h = norm1(x + attn(x)): attention reads the raw input.
            (ResidualLayout::PostNorm, _) => {
                assert_eq!(values(&y), values(&get("norm2")));
                assert_eq!(report.first_divergence.as_deref(), Some("attn.qkv"), "{report}");
            }
            // x + attn(norm1(x)) + mlp(norm2(x)): the MLP reads a norm of the *input*.
            (ResidualLayout::Parallel, false) => {
                assert!(max_abs_diff(&y, &branches) < 1e-6);
                assert_eq!(report.first_divergence.as_deref(), Some("norm2"), "{report}");
            }
            // x + attn(norm1(x)) + mlp(norm1(x)): one norm, recorded once.
            (ResidualLayout::Parallel, true) => {
                assert!(max_abs_diff(&y, &branches) < 1e-6);
                assert!(trace.get("norm2").is_none() && trace.get("norm1#1").is_none());
            }
        }
        outputs.push(y);
    }
    for i in 0..outputs.len() {
        for j in i + 1..outputs.len() {
            let diff = max_abs_diff(&outputs[i], &outputs[j]);
            assert!(diff > 0.05, "layouts {i} and {j} differ by only {diff}");
        }
    }
}

#[test]
fn eval_is_deterministic_and_matches_the_reference_between_training_calls() {
    let bundle = fixture("block_post_norm");
    let expected = bundle.output("0").unwrap().clone();
    let run = Parity::new(&bundle).unwrap();
    let x = run.input("0").unwrap();
    let config: TransformerBlockConfig = {
        let c = &bundle.metadata().config;
        TransformerBlockConfig::torch_encoder(16, 4, 32, c["dropout"].as_f64().unwrap(), Activation::Gelu, 1e-5, false)
    };
    assert!(config.attention.proj_dropout > 0.0);
    let map = WeightMap::new().split(
        r"^self_attn\.in_proj_(weight|bias)$",
        0,
        &["self_attn.q_proj.$1", "self_attn.k_proj.$1", "self_attn.v_proj.$1"],
    );
    let weights = map.apply(run.params().clone(), bundle.origin()).unwrap();
    let block = weights
        .build(DType::F32, &Device::Cpu, |vb| TransformerBlock::new(&config, vb))
        .unwrap();
    let eval = values(&block.forward(&x, None, None).unwrap());

    let a = values(&block.forward_t(&x, None, None, true).unwrap());
    let b = values(&block.forward_t(&x, None, None, true).unwrap());
    assert_ne!(a, b, "two training passes draw different dropout masks");
    assert_ne!(a, eval);

    let c = values(&block.forward_t(&x, None, None, false).unwrap());
    let d = values(&block.forward(&x, None, None).unwrap());
    assert_eq!(c, d);
    assert_eq!(c, eval);
    let y = Tensor::from_vec(c, expected.dims(), &Device::Cpu).unwrap();
    assert!(max_abs_diff(&y, &expected) < 1e-5);
}

#[test]
fn drop_path_and_layer_scale_train_and_evaluate() {
    let bundle = fixture("block_timm_layer_scale");
    let run = Parity::new(&bundle).unwrap();
    let x = run.input("0").unwrap();
    let config = TransformerBlockConfig {
        drop_path: 0.5,
        norm_eps: 1e-6,
        attention: AttentionConfig {
            norm_eps: 1e-6,
            ..AttentionConfig::timm(16, 4, true, true)
        },
        ..TransformerBlockConfig::timm(16, 4, 2.0, true, true, Some(0.1))
    };
    let weights = WeightMap::new().apply(run.params().clone(), bundle.origin()).unwrap();
    let block = weights
        .build(DType::F32, &Device::Cpu, |vb| TransformerBlock::new(&config, vb))
        .unwrap();
    let eval = block.forward(&x, None, None).unwrap();
    assert!(
        max_abs_diff(&eval, bundle.output("0").unwrap()) < 1e-5,
        "drop_path is off in eval"
    );
    let outputs: Vec<Vec<f32>> = (0..8)
        .map(|_| values(&block.forward_t(&x, None, None, true).unwrap()))
        .collect();
    assert!(
        outputs.windows(2).any(|w| w[0] != w[1]),
        "stochastic depth draws per pass"
    );
}
